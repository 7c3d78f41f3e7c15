/**
 * `edgellm eval --emulate native|optimized|quantized` (the Dataflow Compiler's emulation levels) on
 * HARs quantized from stories260K: native is the source fp32 model, optimized the fp32 model after
 * fold-norms/QuaRot, quantized the W4/A8/KV8 model.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import * as path from 'node:path';
import { edgellm, STORIES } from '../helpers/cli.js';
import { makeTempDir, removeDir } from '../helpers/tmp.js';

const WINDOWS = ['--text', 'tinystories', '--max-windows', '4', '--threads', '1'];

function ppl(model: string, ...extra: string[]): number {
  const r = edgellm('eval', model, ...WINDOWS, ...extra, '--json');
  expect(r.code, r.stderr).toBe(0);
  return JSON.parse(r.stdout).ppl;
}

describe('edgellm eval --emulate', () => {
  let dir: string;
  let fp32: number;
  beforeAll(() => {
    dir = makeTempDir('edgellm-emulate-');
    fp32 = ppl(STORIES);
  });
  afterAll(() => removeDir(dir));

  it('a rotated HAR: native is the source model, optimized the rotated fp32 model (same ppl), quantized costs accuracy', () => {
    const har = path.join(dir, 'rot.har');
    const q = edgellm('-q', 'quantize', STORIES, '-o', har, '--method', 'rtn', '--rotate', '--calib-samples', '8');
    expect(q.code, q.stderr).toBe(0);
    // native runs the very weights of the checkpoint: the same figure to float32 rounding
    expect(ppl(har, '--emulate', 'native')).toBeCloseTo(fp32, 6);
    // fold-norms + QuaRot are exact in real arithmetic; float32 rounding moves ppl by < 1e-4 relative
    const opt = ppl(har, '--emulate', 'optimized');
    expect(Math.abs(opt / fp32 - 1)).toBeLessThan(1e-4);
    expect(opt).not.toBe(fp32); // it is a different (rotated) graph, not the native one again
    const quant = ppl(har, '--emulate', 'quantized');
    expect(quant).toBe(ppl(har)); // quantized is the default
    expect(quant).toBeGreaterThan(fp32 * 1.01);
  });

  it('an unrotated HAR: optimized is the native model; without emulation weights both are refused with one line', () => {
    const har = path.join(dir, 'plain.har');
    expect(edgellm('-q', 'quantize', STORIES, '-o', har, '--method', 'rtn', '--calib-samples', '8').code).toBe(0);
    expect(ppl(har, '--emulate', 'optimized')).toBe(ppl(har, '--emulate', 'native'));
    const slim = path.join(dir, 'slim.har');
    expect(edgellm('-q', 'quantize', STORIES, '-o', slim, '--method', 'rtn', '--calib-samples', '8', '--no-emulation-weights').code).toBe(0);
    for (const level of ['native', 'optimized']) {
      const r = edgellm('eval', slim, ...WINDOWS, '--emulate', level);
      expect(r.code).toBe(2);
      expect(r.stderr.trim().split('\n')).toEqual([expect.stringMatching(new RegExp(`holds no '${level}' model.*--no-emulation-weights`))]);
    }
    const hef = path.join(dir, 'plain.hef');
    expect(edgellm('-q', 'compile', har, '-o', hef).code).toBe(0);
    const r = edgellm('eval', hef, ...WINDOWS, '--emulate', 'native');
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/--emulate native needs a HAR/);
  });
});
