/**
 * `edgellm quantize --auto-precision` and `edgellm analyze` end to end on stories260K (the built
 * CLI, as a user runs them), on 16 calibration windows with the KLD measured on 2 (to keep the test
 * short; the figures of docs/quantization.md use the defaults):
 * - the recipe `--auto-precision` writes, quantized by hand with `--recipe`, gives a byte-identical
 *   HAR (issue 13's acceptance), and its promotions fit the budget;
 * - `analyze` on the default HAR measures the same sensitivity as the one inside quantize and, with
 *   `--reuse --budget`, writes the same recipe;
 * - the analysis lands in the HAR report (`inspect --json`);
 * - bad flags are one-line usage errors (exit code 2), before any work, with nothing written.
 */
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { edgellm, edgellmAsync, STORIES } from '../helpers/cli.js';
import { suiteTempDir } from '../helpers/tmp.js';

const dir = suiteTempDir('edgellm-cli-analyze-');
const CALIB = ['--calib-samples', '16', '--analyze-windows', '2'];
const sha = (f: string) => crypto.createHash('sha256').update(fs.readFileSync(f)).digest('hex');
const at = (name: string) => path.join(dir, name);

function ok(...args: string[]): string {
  const r = edgellm(...args);
  expect(r.code, r.stderr).toBe(0);
  return r.stdout;
}

/** {@link ok} for the runs of a minute (the analysis), without blocking the worker. */
async function okAsync(...args: string[]): Promise<string> {
  const r = await edgellmAsync(...args);
  expect(r.code, r.stderr).toBe(0);
  return r.stdout;
}

describe('quantize --auto-precision --budget +10%', () => {
  let auto: { autoPrecision: { recipe: string; addedBytes: number; budgetBytes: number; chosen: { module: string; bytes: number }[]; sensitivity: { baselineBytes: number; candidates: unknown[] } } };
  beforeAll(async () => {
    auto = JSON.parse(await okAsync('-q', 'quantize', STORIES, '-o', at('auto.har'), ...CALIB, '--auto-precision', '--budget', '+10%', '--json'));
  }, 600_000);

  it('writes the chosen recipe beside the HAR; its promotions fit the budget', () => {
    const a = auto.autoPrecision;
    expect(a.recipe).toBe(at('auto.recipe.yaml'));
    const text = fs.readFileSync(a.recipe, 'utf8');
    expect(a.budgetBytes).toBe(Math.floor(a.sensitivity.baselineBytes * 0.1));
    expect(a.addedBytes).toBe(a.chosen.reduce((s, c) => s + c.bytes, 0));
    expect(a.addedBytes).toBeLessThanOrEqual(a.budgetBytes);
    expect(a.chosen.length).toBeGreaterThan(0);
    for (const c of a.chosen) expect(text).toContain(`${c.module}: {`);
  });

  it('the same recipe written by hand gives a byte-identical HAR', () => {
    const hand = at('hand.yaml');
    // by hand: the overrides only, no comments
    const lines = fs.readFileSync(auto.autoPrecision.recipe, 'utf8').split('\n').filter((l) => l && !l.startsWith('#'));
    fs.writeFileSync(hand, lines.map((l) => l.replace(/ #.*$/, '')).join('\n') + '\n');
    ok('-q', 'quantize', STORIES, '-o', at('hand.har'), '--calib-samples', '16', '--recipe', hand);
    expect(sha(at('hand.har'))).toBe(sha(at('auto.har')));
  }, 120_000);

  it('analyze on the default HAR measures the same candidates, stores them in the report, and --reuse --budget writes the same recipe', async () => {
    ok('-q', 'quantize', STORIES, '-o', at('default.har'), '--calib-samples', '16');
    const r = JSON.parse(await okAsync('-q', 'analyze', at('default.har'), ...CALIB, '--json'));
    expect(r.sensitivity).toEqual(auto.autoPrecision.sensitivity);
    const stored = JSON.parse(ok('inspect', at('default.har'), '--json'));
    expect(stored.report.sensitivity).toEqual(r.sensitivity);
    ok('-q', 'analyze', at('default.har'), '--reuse', '--budget', '+10%', '--write-recipe', at('again.yaml'));
    expect(fs.readFileSync(at('again.yaml'), 'utf8')).toBe(fs.readFileSync(auto.autoPrecision.recipe, 'utf8'));
  }, 600_000);
});

describe('bad flags: one line, exit code 2, nothing written', () => {
  const cases: [string, string[], RegExp][] = [
    ['--auto-precision without --budget', ['--auto-precision'], /--auto-precision needs --budget/],
    ['--budget without --auto-precision', ['--budget', '+10%'], /--budget needs --auto-precision/],
    ['a bare percentage', ['--auto-precision', '--budget', '10%'], /--budget 10%: a percentage is relative: write \+10%/],
    ['a precision flag with --auto-precision', ['--auto-precision', '--budget', '+10%', '--group-size', '64'], /--group-size conflicts with --auto-precision/],
    ['an unknown promotion kind', ['--auto-precision', '--budget', '+10%', '--promotions', 'w8,w2'], /--promotions w8,w2: unknown kind 'w2'/],
  ];
  for (const [what, flags, message] of cases)
    it(what, () => {
      const out = at(`bad-${what.replace(/\W+/g, '-')}.har`);
      const r = edgellm('quantize', STORIES, '-o', out, ...flags);
      expect(r.code).toBe(2);
      expect(r.stderr.trim().split('\n')).toHaveLength(1);
      expect(r.stderr).toMatch(message);
      expect(fs.existsSync(out)).toBe(false);
      expect(fs.existsSync(out.replace(/\.har$/, '.recipe.yaml'))).toBe(false);
    });

  it('analyze of a HAR without fp32 emulation weights, and --reuse with nothing stored', () => {
    ok('-q', 'quantize', STORIES, '-o', at('lean.har'), '--calib-samples', '4', '--no-emulation-weights');
    const before = sha(at('lean.har'));
    const r = edgellm('analyze', at('lean.har'));
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/lean\.har: holds no fp32 emulation weights/);
    const reuse = edgellm('analyze', at('lean.har'), '--reuse', '--budget', '+5%');
    expect(reuse.code).toBe(2);
    expect(reuse.stderr).toMatch(/holds no sensitivity analysis to reuse; run edgellm analyze/);
    expect(sha(at('lean.har'))).toBe(before);
  }, 120_000);
});
