/**
 * `edgellm eval` through the built CLI: ppl + kld + hellaswag in one run, the JSON report, and the
 * accuracy gate — it passes on the real quantized model against its own baseline and fails, with one
 * line per violated threshold, on a deliberately broken one (every W4 scale halved).
 */
import { describe, it, expect, beforeAll } from 'vitest';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { edgellm, STORIES } from '../helpers/cli.js';
import { makeTempDir } from '../helpers/tmp.js';
import { loadHfModel } from '../../formats/hf.js';
import { loadModelHar, saveModelHar } from '../../formats/har-model.js';
import { inMemory } from '../../src/ir/model.js';
import { rtn } from '../../passes/rtn.js';
import { silentContext } from '../../src/core/context.js';

// a few windows and tasks: the CI gate's size, seconds per run
const EVAL = ['--task', 'ppl,kld,hellaswag', '--text', 'tinystories', '--max-windows', '8', '--reference', STORIES, '--limit', '50'];

describe('edgellm eval gate on stories260K', () => {
  let dir: string;
  let good: string;
  let broken: string;
  let baseline: string;
  beforeAll(async () => {
    dir = makeTempDir('edgellm-gate-');
    good = path.join(dir, 'good.har');
    broken = path.join(dir, 'broken.har');
    baseline = path.join(dir, 'baseline.json');
    // W4 g64 RTN through the library (fast and independent of the quantize recipe of the day)
    const info = { modelName: 'stories260K', sourceSha256: '' };
    await saveModelHar(good, rtn(loadHfModel(STORIES), { groupSize: 64, quantizeLmHead: false }, silentContext), info);
    // the deliberately broken model: the same HAR with every <linear>.scales halved
    const { model } = await loadModelHar(good);
    const weights = new Map(model.weights);
    let halved = 0;
    for (const [name, t] of model.weights)
      if (name.endsWith('.scales')) {
        const s = t.load();
        weights.set(name, inMemory({ ...s, data: (s.data as Float32Array).map((x) => x / 2) }));
        halved++;
      }
    expect(halved).toBe(5 * 7); // q, k, v, o, gate, up, down in 5 layers
    await saveModelHar(broken, { ...model, weights }, info);
  });

  it('--write-baseline records every figure with the model and dataset sha256, the settings and the version', () => {
    const r = edgellm('eval', good, ...EVAL, '--write-baseline', baseline);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/^ppl +perplexity +\d+\.\d{4}/m);
    expect(r.stdout).toMatch(/^hellaswag +acc +\d+\.\d\d%/m);
    const b = JSON.parse(fs.readFileSync(baseline, 'utf8'));
    expect(b.edgellmVersion).toMatch(/^\d+\.\d+\.\d+/);
    expect(b.modelSha256).toMatch(/^[0-9a-f]{64}$/);
    expect(b.textSha256).toBe('3ccdd4ecfe9b52fed5931479dc95ca56ce9fe44e3347cdf0daf401b3729d761c');
    expect(b.hellaswag.sha256).toBe('d572539320eb2050e858ca34b495bbe2103e3b3f1391a9c3bcdf215b0bb93bd1');
    expect(b.settings).toMatchObject({ tasks: ['ppl', 'kld', 'hellaswag'], seqLen: 256, maxWindows: 8 });
    expect(b.windows).toBe(8);
    expect(b.predictions).toBe(8 * 255);
    // ppl comes from the KLD pass over the same windows
    expect(b.ppl).toBe(b.kld.ppl);
    expect(b.kld.meanKld).toBeGreaterThan(0);
    expect(b.kld.top1Agreement).toBeGreaterThan(0.5);
    expect(b.hellaswag.tasks).toBe(50);
  });

  it('passes on the same model (exit 0)', () => {
    const r = edgellm('eval', good, ...EVAL, '--baseline', baseline);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/gate vs .*: passed/);
    expect(r.stdout.match(/^ {2}ok {3}/gm)?.length).toBe(3);
  });

  it('fails on the broken model (exit 1) with one line per violated threshold', () => {
    const r = edgellm('eval', broken, ...EVAL, '--baseline', baseline, '--json');
    expect(r.code).toBe(1);
    const lines = r.stderr.trim().split('\n');
    expect(lines).toEqual(
      expect.arrayContaining([expect.stringMatching(/^gate: ppl \d+\.\d+ vs baseline \d+\.\d+ \(\+\d+\.\d+%, max \+1\.00%\)$/), expect.stringMatching(/^gate: kld /)]),
    );
    expect(lines[lines.length - 1]).toMatch(/^error: accuracy gate failed: \d threshold\(s\) violated/);
    const out = JSON.parse(r.stdout); // --json without a file: the report with the gate's verdict on stdout
    expect(out.gate.violations.length).toBeGreaterThanOrEqual(2);
    expect(out.ppl).toBeGreaterThan(1.5 * JSON.parse(fs.readFileSync(baseline, 'utf8')).ppl);
  });

  it('fails when the run does not measure what the baseline measured, and takes thresholds from flags', () => {
    const other = edgellm('eval', good, ...EVAL.slice(0, 5), '4', ...EVAL.slice(6), '--baseline', baseline);
    expect(other.code).toBe(1);
    expect(other.stderr).toMatch(/gate: ppl: not comparable with the baseline \(8 vs 4 windows\)/);
    const loose = edgellm('eval', broken, '--text', 'tinystories', '--max-windows', '8', '--baseline', baseline, '--max-ppl-increase', '1000000%');
    expect(loose.code, loose.stderr).toBe(0);
    expect(loose.stdout).toMatch(/skip kld/);
  });

  it('--json FILE writes the report and keeps the table on stdout; usage errors exit 2', () => {
    const out = path.join(dir, 'r.json');
    const r = edgellm('eval', good, '--task', 'hellaswag', '--limit', '20', '--json', out);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/acc_norm/);
    const j = JSON.parse(fs.readFileSync(out, 'utf8'));
    expect(j.hellaswag.tasks).toBe(20);
    expect(j.ppl).toBeUndefined();
    expect(edgellm('eval', good, '--task', 'kld', '--text', 'tinystories').code).toBe(2); // no --reference
    expect(edgellm('eval', good, '--task', 'ppl').code).toBe(2); // no --text
    expect(edgellm('eval', good, '--task', 'mmlu').code).toBe(2);
  });
});
