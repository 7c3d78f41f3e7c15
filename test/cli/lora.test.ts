/**
 * LoRA through the built CLI on the real stories260K: quantize -> add-lora (the real wiki adapter,
 * int8) -> add-lora (a generated rank-4 adapter on q/gate/up/down, 4-bit) -> compile -> inspect / run
 * --adapter, with in-process adapter switching checked against separate fresh runs, and every malformed
 * adapter rejected with one line while the HAR stays byte-identical.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { edgellm, STORIES, SHARED } from '../helpers/cli.js';
import { WIKI_ADAPTER as WIKI } from '../helpers/paths.js';
import { centredUniform } from '../helpers/random.js';
import { makeTempDir, removeDir } from '../helpers/tmp.js';
import { readHar } from '../../formats/har.js';
import { writePeftAdapter, type PeftModuleWeights } from '../../formats/peft.js';
import { normalizeConfig } from '../../formats/hf.js';
import { layerLinears } from '../../src/ir/architectures.js';
import { readExecutable } from '../../formats/hef-executable.js';
import { SimulatorBackend } from '../../src/runtime/simulator.js';
import { generate } from '../../src/runtime/generate.js';
import { perplexity } from '../../src/eval/ppl.js';
import { TextTokenizer } from '../../formats/tokenizer.js';
import { loadTextFile } from '../../calibration/datasets.js';
import { slidingWindows } from '../../calibration/windows.js';
import { sha256File } from '../../src/core/digest.js';

const cfg = normalizeConfig(JSON.parse(fs.readFileSync(path.join(STORIES, 'config.json'), 'utf8')));
const sha = sha256File;

/** A seeded random PEFT adapter (rank 4, alpha 4) on `roles` of every layer, written to `d`. */
function randomAdapter(d: string, roles: string[], seed: number, config: Record<string, unknown> = {}): void {
  const rnd = centredUniform(seed, 0.6);
  const mods: PeftModuleWeights[] = [];
  for (let l = 0; l < cfg.numLayers; l++)
    for (const s of layerLinears(cfg, l).filter((s) => roles.includes(s.role)))
      mods.push({ linear: s.name, rank: 4, inFeatures: s.inFeatures, outFeatures: s.outFeatures, A: Float32Array.from({ length: 4 * s.inFeatures }, rnd), B: Float32Array.from({ length: s.outFeatures * 4 }, rnd) });
  writePeftAdapter(d, { r: 4, lora_alpha: 4, target_modules: roles, base_model_name_or_path: 'stories260K', ...config }, mods);
}

let dir: string;
let base: string;
let both: string;
let hef: string;
beforeAll(() => {
  dir = makeTempDir('edgellm-cli-lora-');
  base = path.join(dir, 'base.har');
  both = path.join(dir, 'both.har');
  hef = path.join(dir, 'both.hef');
  const q = edgellm('quantize', STORIES, '-o', base, '--calib-samples', '16');
  if (q.code !== 0) throw new Error(q.stderr);
  randomAdapter(path.join(dir, 'rnd'), ['q_proj', 'gate_proj', 'up_proj', 'down_proj'], 5);
});
afterAll(() => removeDir(dir));

describe('edgellm add-lora / compile / run --adapter', () => {
  it('adds two adapters without touching the base weights or each other, and compiles them into one HEF', async () => {
    const a = edgellm('add-lora', WIKI, '--har', base, '--name', 'wiki', '-o', both, '--calib-samples', '16', '--json');
    expect(a.code, a.stderr).toBe(0);
    const s = JSON.parse(a.stdout);
    expect([s.adapter, s.r, s.alpha, s.bits, s.modules, s.targets]).toEqual(['wiki', 8, 16, 8, 20, ['q_proj', 'k_proj', 'v_proj', 'o_proj']]);
    // refit to the W4 base by default (the HAR keeps its fp32 weights), recorded in the manifest
    expect(s.refit.modules).toBe(20);
    expect(s.refit.residualAfter).toBeLessThan(s.refit.residualBefore);
    const b = edgellm('add-lora', path.join(dir, 'rnd'), '--har', both, '--name', 'rnd', '--lora-bits', '4', '--calib-samples', '16');
    expect(b.code, b.stderr).toBe(0);
    expect(b.stderr).toMatch(/added adapter 'rnd' \(r 4, 20 modules: q_proj, gate_proj, up_proj, down_proj; 4-bit A\/B/);
    const h0 = await readHar(base);
    const h1 = await readHar(both);
    expect(h1.files.get('weights.safetensors')).toEqual(h0.files.get('weights.safetensors'));
    expect(h1.files.get('ranges.json')).toEqual(h0.files.get('ranges.json'));
    expect([...h1.files.keys()].filter((k) => k.startsWith('adapters/'))).toEqual(['adapters/wiki.safetensors', 'adapters/rnd.safetensors']);
    expect(edgellm('compile', both, '-o', hef, '--prefill-len', '32').code).toBe(0);
    const insp = JSON.parse(edgellm('inspect', hef, '--json').stdout);
    expect(insp.adapters.map((x: any) => [x.name, x.r, x.bits, x.modules, x.targets.join(',')])).toEqual([
      ['wiki', 8, 8, 20, 'q_proj,k_proj,v_proj,o_proj'],
      ['rnd', 4, 4, 20, 'q_proj,gate_proj,up_proj,down_proj'],
    ]);
    // the refit record travels HAR -> HEF header
    expect(insp.adapters.map((x: any) => x.refit.modules)).toEqual([20, 20]);
    expect(insp.adapters[0].refit.residualAfter).toBeLessThan(insp.adapters[0].refit.residualBefore);
    const manifest = h1.manifest as { adapters: { source: { refit: { modules: number } } }[] };
    expect(manifest.adapters[0].source.refit.modules).toBe(20);
    expect(manifest.adapters[1].source.refit.modules).toBe(20);
    expect(edgellm('inspect', both).stdout).toMatch(/LoRA adapters \(2\):\n {2}wiki +r 8, alpha 16, 8-bit A\/B, 20 modules \(q_proj, k_proj, v_proj, o_proj\), [\d.]+ KiB, refit to the W4 base \(base-error residual −[\d.]+%\)/);
  });

  it('--no-refit keeps A/B as trained; a HAR without fp32 weights is not refit, with one warning', () => {
    const plain = edgellm('add-lora', WIKI, '--har', base, '--name', 'wiki', '-o', path.join(dir, 'plain.har'), '--calib-samples', '16', '--no-refit', '--json');
    expect(plain.code, plain.stderr).toBe(0);
    expect(JSON.parse(plain.stdout).refit).toBeNull();
    const lean = path.join(dir, 'lean.har');
    expect(edgellm('quantize', STORIES, '-o', lean, '--calib-samples', '16', '--no-emulation-weights').code).toBe(0);
    const r = edgellm('add-lora', WIKI, '--har', lean, '--name', 'wiki', '--calib-samples', '16', '--json');
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout).refit).toBeNull();
    expect(r.stderr.trim().split('\n')).toEqual([expect.stringMatching(/^warning: .*lean\.har keeps no fp32 weights .*not refit/)]);
  });

  it('switching adapters request by request in one process gives the tokens of separate fresh runs', async () => {
    const prompt = 'The history of the city';
    const fresh = new Map<string | null, number[]>();
    for (const a of ['wiki', 'rnd', null]) {
      const r = edgellm('run', hef, '--prompt', prompt, '-n', '24', '--temperature', '0', '--json', ...(a ? ['--adapter', a] : []));
      expect(r.code, r.stderr).toBe(0);
      fresh.set(a, JSON.parse(r.stdout).tokens);
    }
    expect(new Set([...fresh.values()].map(String)).size).toBe(3);
    const exe = readExecutable(hef);
    const backend = await SimulatorBackend.load(exe);
    const ids = await new TextTokenizer(exe.tokenizer).encode(prompt, true);
    for (const a of ['rnd', null, 'wiki', 'wiki', null, 'rnd']) {
      const ctx = backend.newContext({ adapter: a });
      const r = await generate(backend, ids, { maxTokens: 24, temperature: 0, topP: 1, topK: 0, seed: 0, stopTokens: exe.config.eosTokenIds }, undefined, ctx);
      expect(r.tokens).toEqual(fresh.get(a));
    }
    await backend.dispose();
    const bad = edgellm('run', hef, '--adapter', 'nope', '-n', '2');
    expect(bad.code).not.toBe(0);
    expect(bad.stderr).toBe("error: no LoRA adapter 'nope' in this executable (it has: wiki, rnd)\n");
  });

  it('the wiki adapter lowers the quantized HEF perplexity on WikiText-2 (first 8 windows of 256)', async () => {
    const exe = readExecutable(hef);
    const ids = await new TextTokenizer(exe.tokenizer).encode(loadTextFile(path.join(SHARED, 'data/wikitext-2-raw/wiki.test.joined.txt')), true);
    const windows = slidingWindows(ids, 256, 8);
    const backend = await SimulatorBackend.load(exe);
    const without = (await perplexity(backend, windows)).ppl;
    backend.selectAdapter('wiki');
    const withWiki = (await perplexity(backend, windows)).ppl;
    await backend.dispose();
    expect(withWiki).toBeLessThan(0.5 * without); // fp32: 100.9 -> 24.1 on 40 windows
  });
});

describe('edgellm quantize --merge-lora', () => {
  it('folds the adapter into the fp32 weights before GPTQ; a malformed adapter fails with one line and no output', async () => {
    const merged = path.join(dir, 'merged.har');
    const r = edgellm('quantize', STORIES, '-o', merged, '--merge-lora', WIKI, '--calib-samples', '16', '--json');
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout).passes.map((p: { name: string }) => p.name)).toEqual(['merge-lora', 'gptq', 'k-centering', 'calibrate']);
    const ppl = (f: string) => JSON.parse(edgellm('eval', f, '--text', 'wikitext2', '--max-windows', '8', '--json').stdout);
    expect(ppl(merged).ppl).toBeLessThan(0.5 * ppl(base).ppl); // fp32: 100.9 -> 24.1 with the adapter
    const d = path.join(dir, 'merge-dora');
    randomAdapter(d, ['q_proj'], 2, { use_dora: true });
    const bad = edgellm('quantize', STORIES, '-o', path.join(dir, 'never-merged.har'), '--merge-lora', d);
    expect(bad.code).not.toBe(0);
    expect(bad.stderr).toMatch(/^error: .*DoRA \(use_dora: true\) is not supported.*\n$/);
    expect(fs.existsSync(path.join(dir, 'never-merged.har'))).toBe(false);
  });
});

describe('edgellm add-lora: malformed adapters give one line and leave the HAR untouched', () => {
  const cases: [string, (d: string) => void, RegExp][] = [
    ['PyTorch .bin', (d) => fs.renameSync(path.join(d, 'adapter_model.safetensors'), path.join(d, 'adapter_model.bin')), /convert it to adapter_model\.safetensors/],
    ['DoRA', (d) => patch(d, { use_dora: true }), /DoRA \(use_dora: true\) is not supported/],
    ['bias lora_only', (d) => patch(d, { bias: 'lora_only' }), /bias "lora_only" \(only "none"\) is not supported/],
    ['unknown target', (d) => patch(d, { target_modules: ['query_key_value'] }), /target module 'query_key_value' does not exist in the base model/],
    ['wrong shapes', (d) => patch(d, { r: 2 }), /lora_A is \[4, 64\], the base linear needs \[r, in\] = \[2, 64\]/],
  ];
  function patch(d: string, p: Record<string, unknown>): void {
    const f = path.join(d, 'adapter_config.json');
    fs.writeFileSync(f, JSON.stringify({ ...JSON.parse(fs.readFileSync(f, 'utf8')), ...p }));
  }
  for (const [what, breakIt, msg] of cases)
    it(what, () => {
      const d = path.join(dir, `bad-${what.replace(/\W+/g, '-')}`);
      randomAdapter(d, ['q_proj'], 9);
      breakIt(d);
      const before = sha(base);
      const out = path.join(dir, 'never.har');
      for (const args of [['--har', base, '-o', out], ['--har', base]]) {
        const r = edgellm('add-lora', d, ...args, '--name', 'bad');
        expect(r.code).not.toBe(0);
        expect(r.stderr).toMatch(msg);
        expect(r.stderr.trimEnd().split('\n')).toHaveLength(1);
        expect(r.stderr.startsWith('error: ')).toBe(true);
      }
      expect(sha(base)).toBe(before);
      expect(fs.existsSync(out)).toBe(false);
      expect(fs.readdirSync(dir).filter((f) => f.endsWith('.tmp'))).toEqual([]);
    });

  it('a duplicate adapter name is refused; a different base_model_name_or_path is only a warning', () => {
    const before = sha(both);
    const dup = edgellm('add-lora', WIKI, '--har', both, '--name', 'wiki');
    expect(dup.code).not.toBe(0);
    expect(dup.stderr).toMatch(/^error: --name 'wiki': the HAR already has an adapter of that name\n$/);
    expect(sha(both)).toBe(before);
    const d = path.join(dir, 'other-base');
    randomAdapter(d, ['v_proj'], 3, { base_model_name_or_path: 'meta-llama/Llama-2-7b-hf' });
    const w = edgellm('add-lora', d, '--har', base, '--name', 'other', '-o', path.join(dir, 'other.har'), '--calib-samples', '4');
    expect(w.code, w.stderr).toBe(0);
    expect(w.stderr).toMatch(/^warning: .*base_model_name_or_path 'meta-llama\/Llama-2-7b-hf' differs from the base model 'stories260K'; applying it anyway\n/);
  });
});
