/** runtime/gate: threshold checks between an eval report and a baseline, on hand-made reports. */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { checkGate, parsePercent, readBaseline, writeReport, DEFAULT_GATE, type EvalReport } from '../../src/eval/gate.js';
import { FormatError, UsageError } from '../../src/core/errors.js';
import { makeTempDir } from '../helpers/tmp.js';

const kld = (meanKld: number, referenceSha256 = 'ref') => ({
  reference: 'fp32/',
  referenceKind: 'model-dir',
  referenceSha256,
  meanKld,
  kldStderr: 0,
  medianKld: meanKld,
  p99Kld: meanKld,
  maxKld: meanKld,
  top1Agreement: 0.9,
  ppl: 7,
  referencePpl: 6.5,
  pplRatio: 7 / 6.5,
  lnPplRatio: Math.log(7 / 6.5),
  lnPplRatioStderr: 0,
  windowNll: [],
  referenceWindowNll: [],
  predictions: 2550,
  windows: 10,
  seconds: 1,
});
const hs = (accNorm: number, tasks = 400) => ({
  file: 'hs.txt',
  sha256: 'hs',
  tasks,
  acc: accNorm,
  accNorm,
  accStderr: 0.02,
  accNormStderr: 0.02,
  scoredTokens: 1,
  forwardedTokens: 1,
  seconds: 1,
});
function report(over: Partial<EvalReport> = {}): EvalReport {
  return {
    edgellmVersion: '0.1.0',
    createdAt: '2026-01-01T00:00:00Z',
    model: 'm.hef',
    kind: 'hef',
    modelSha256: 'abc',
    settings: {},
    text: 'tiny.txt',
    textSha256: 'txt',
    seqLen: 256,
    ppl: 7,
    meanNll: Math.log(7),
    predictions: 2550,
    windows: 10,
    kld: kld(0.05),
    hellaswag: hs(0.27),
    seconds: 3,
    ...over,
  };
}

describe('checkGate', () => {
  it('passes a run equal to its baseline, and one within every threshold', () => {
    const base = report();
    expect(checkGate(report(), base).violations).toEqual([]);
    const r = checkGate(report({ ppl: 7 * 1.0099, kld: kld(0.0599), hellaswag: hs(0.2601) }), base, DEFAULT_GATE);
    expect(r.violations).toEqual([]);
    expect(r.checks.length).toBe(3);
  });

  it('lists one line per violated threshold', () => {
    const r = checkGate(report({ ppl: 7.1, kld: kld(0.07), hellaswag: hs(0.25) }), report(), DEFAULT_GATE);
    expect(r.violations.length).toBe(3);
    expect(r.violations[0]).toMatch(/^ppl 7\.1000 vs baseline 7\.0000 \(\+1\.43%, max \+1\.00%\)$/);
    expect(r.violations[1]).toMatch(/^kld 0\.07000 vs baseline 0\.05000 nats \(\+0\.02000, max \+0\.01\)$/);
    expect(r.violations[2]).toMatch(/^hellaswag acc_norm 25\.00% vs baseline 27\.00% \(drop 2\.00 points, max 1\)$/);
    // looser thresholds let the same run pass
    expect(checkGate(report({ ppl: 7.1, kld: kld(0.07), hellaswag: hs(0.25) }), report(), { maxPplIncrease: 0.02, maxKld: 0.03, maxHellaswagDrop: 2.5 }).violations).toEqual([]);
  });

  it('counts an improvement as a pass', () => {
    expect(checkGate(report({ ppl: 6, kld: kld(0.01), hellaswag: hs(0.3) }), report()).violations).toEqual([]);
  });

  it('refuses to compare figures measured on other data or against another reference', () => {
    const r = checkGate(report({ textSha256: 'other', hellaswag: hs(0.27, 100), kld: kld(0.05) }), report());
    expect(r.violations).toEqual([
      expect.stringMatching(/^ppl: not comparable with the baseline \(text sha256/),
      expect.stringMatching(/^kld: not comparable/),
      expect.stringMatching(/^hellaswag: not comparable .* 400 tasks vs .* 100 tasks\)$/),
    ]);
    expect(checkGate(report({ windows: 5 }), report()).violations[0]).toMatch(/10 vs 5 windows/);
    expect(checkGate(report({ kld: kld(0.05, 'other-ref') }), report()).violations[0]).toMatch(/reference sha256/);
  });

  it('skips metrics only one side has, and fails when nothing can be compared', () => {
    const r = checkGate(report({ kld: undefined, hellaswag: undefined }), report());
    expect(r.violations).toEqual([]);
    expect(r.skipped).toEqual(['kld', 'hellaswag']);
    const none = checkGate(report({ ppl: undefined, kld: undefined }), report({ hellaswag: undefined }));
    expect(none.violations).toEqual([expect.stringMatching(/^nothing to compare/)]);
  });
});

describe('parsePercent', () => {
  it('reads "1%", "1" and "0.5%" as percentages', () => {
    expect(parsePercent('--x', '1%')).toBe(0.01);
    expect(parsePercent('--x', '1')).toBe(0.01);
    expect(parsePercent('--x', '0.5%')).toBe(0.005);
    expect(() => parsePercent('--x', '-1%')).toThrow(UsageError);
    expect(() => parsePercent('--x', 'lots')).toThrow(UsageError);
  });
});

describe('baseline files', () => {
  it('round-trip through writeReport/readBaseline and reject what is not a report', () => {
    const dir = makeTempDir('edgellm-gate-');
    const f = path.join(dir, 'b.json');
    writeReport(f, report());
    expect(readBaseline(f)).toEqual(report());
    fs.writeFileSync(f, '{"ppl": 3}');
    expect(() => readBaseline(f)).toThrow(FormatError);
    fs.writeFileSync(f, 'nope');
    expect(() => readBaseline(f)).toThrow(/not valid JSON/);
    expect(() => readBaseline(path.join(dir, 'missing.json'))).toThrow(UsageError);
  });
});
