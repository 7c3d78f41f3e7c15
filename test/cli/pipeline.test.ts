/**
 * The main job end to end through the built CLI, on the real stories260K: quantize -> compile -> run
 * and eval, checked against the TypeScript reference forward and the acceptance thresholds.
 */
import { describe, it, expect, beforeAll } from 'vitest';
import * as path from 'node:path';
import { edgellm, STORIES } from '../helpers/cli.js';
import { TINYSTORIES as TINY } from '../helpers/paths.js';
import { makeTempDir } from '../helpers/tmp.js';
import { loadHfModel } from '../../formats/hf.js';
import { referenceForward } from '../../src/ir/reference.js';
import { argmax } from '../../src/runtime/sampling.js';

describe('edgellm CLI on stories260K', () => {
  let dir: string;
  beforeAll(() => {
    dir = makeTempDir('edgellm-cli-');
  });

  it('run on the model directory prints the known greedy continuation, with the reference forward greedy ids', () => {
    const r = edgellm('run', STORIES, '--prompt', '', '--max-tokens', '60', '--temperature', '0', '--json');
    expect(r.code).toBe(0);
    const out = JSON.parse(r.stdout);
    expect(out.text.startsWith('Once upon a time, there was a little girl named Lily. She loved to play outside in the park')).toBe(true);
    // Greedy ids by the independent TypeScript forward (recomputing the whole sequence each step).
    const model = loadHfModel(STORIES);
    const seq = [1];
    for (let i = 0; i < 60; i++) {
      const logits = referenceForward(model, seq);
      seq.push(argmax(logits.subarray((seq.length - 1) * 512, seq.length * 512)));
    }
    expect(out.tokens).toEqual(seq.slice(1));
  });

  it('eval on the model directory gives the fp32 TinyStories perplexity 6.237 (3 significant digits)', () => {
    const r = edgellm('eval', STORIES, '--text', TINY, '--seqlen', '256', '--json');
    expect(r.code).toBe(0);
    const out = JSON.parse(r.stdout);
    expect(out.windows).toBe(60);
    expect(out.predictions).toBe(60 * 255);
    expect(Math.abs(out.ppl - 6.237)).toBeLessThan(0.005);
  });

  it('quantize -> compile -> run -> eval: coherent greedy text and HEF perplexity below 1.35x fp32', () => {
    const har = path.join(dir, 'm.har');
    const hef = path.join(dir, 'm.hef');
    const q = edgellm('quantize', STORIES, '-o', har, '--json');
    expect(q.code, q.stderr).toBe(0);
    expect(JSON.parse(q.stdout).passes.map((p: { name: string }) => p.name)).toEqual(['gptq', 'k-centering', 'calibrate']);
    expect(edgellm('compile', har, '-o', hef).code).toBe(0);
    const insp = JSON.parse(edgellm('inspect', hef, '--json').stdout);
    expect(insp.sections.map((s: { name: string }) => s.name)).toEqual(
      expect.arrayContaining(['graph.prefill', 'graph.decode', 'weights', 'tokenizer.json']),
    );
    expect(insp.kvCache.dtype).toBe('uint8');
    expect(insp.quantScheme.kvScheme).toBe('static-asymmetric-per-tensor-u8+k-centered');
    expect(insp.kvCache.layers).toBe(5);
    const run = JSON.parse(edgellm('run', hef, '--prompt', '', '--max-tokens', '40', '--temperature', '0', '--json').stdout);
    expect(run.text.startsWith('Once upon a time')).toBe(true);
    const fp = JSON.parse(edgellm('eval', STORIES, '--text', TINY, '--json').stdout).ppl;
    const qp = JSON.parse(edgellm('eval', hef, '--text', TINY, '--json').stdout).ppl;
    expect(qp).toBeGreaterThan(fp); // quantization costs something...
    expect(qp / fp).toBeLessThan(1.35); // ...but stays within the acceptance bound
    // the HAR evaluates (compiled in memory) to exactly the HEF's figure
    const hp = JSON.parse(edgellm('eval', har, '--text', TINY, '--json').stdout).ppl;
    expect(hp).toBeCloseTo(qp, 6);
  });

  it('quantize --no-k-centering keeps the plain KV8 scheme', () => {
    const har = path.join(dir, 'plain.har');
    const q = edgellm('quantize', STORIES, '-o', har, '--method', 'rtn', '--no-k-centering', '--calib-samples', '8', '--json');
    expect(q.code, q.stderr).toBe(0);
    expect(JSON.parse(q.stdout).passes.map((p: { name: string }) => p.name)).toEqual(['rtn', 'calibrate']);
    const insp = JSON.parse(edgellm('inspect', har, '--json').stdout);
    expect(insp.quantScheme.kvScheme).toBe('static-asymmetric-per-tensor-u8');
  });
});
