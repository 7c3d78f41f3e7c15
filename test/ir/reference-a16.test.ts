/**
 * src/ir/reference.ts `quantization: 'static'` with activation points at 8, 16 and 32 bits and W8
 * linears, against the compiled HEF run by the simulator at precision 'exact', on the real
 * stories260K: layer 0's points and every down_proj input at 16 bits (uint16, com.microsoft
 * QuantizeLinear), lm_head_in and layer 3's o_proj_in float, the rest A8; KV8 (K centered);
 * every down_proj and the tied lm_head W8 g32/g16 (the embedding reads lm_head's W8 table).
 *
 * The checks are test/ir/reference-static.test.ts's (its header explains the flips; the bookkeeping is
 * test/helpers/qdq-agreement.ts): the logits agree to 1e-4 on every row before a window's first code
 * that differs from ORT's, every such first code lies within 1e-3 code units of a rounding boundary
 * in both computations, and with the reference
 * taking ORT's code only where its own value is that close to a boundary every row of every window
 * agrees to 1e-4 and no other code differs, every differing code a neighbour of ORT's. At 16 bits a
 * code unit is 257× smaller than at 8, so the same float32-size difference in a value reaches a
 * boundary 257× more often ({@link BOUNDARY}): measured on 16 windows of 128 tokens (2.1M codes at
 * each width), every window has a first flip, at a 16-bit point, within its first 18 positions (so
 * only 67 of the 2,048 rows precede one: the independent check is thin at 16 bits), and following
 * ORT takes 4 8-bit and 597 16-bit codes, after which every row agrees to 1.4e-5.
 * EDGELLM_REPORT_FLIPS=1 prints the figures.
 */
import * as fs from 'node:fs';
import { beforeAll, describe, expect, it } from 'vitest';
import { loadHfModel } from '../../formats/hf.js';
import { TextTokenizer } from '../../formats/tokenizer.js';
import { loadTextFile, loadTokenWindows } from '../../calibration/datasets.js';
import { slidingWindows } from '../../calibration/windows.js';
import { referenceForward } from '../../src/ir/reference.js';
import type { Model } from '../../src/ir/model.js';
import { MIXED_POINTS, quantizeWithRecipe, runQdqGraph, type QdqRun } from '../helpers/recipe-quantize.js';
import { agreement, BOUNDARY, hefLogits } from '../helpers/qdq-agreement.js';
import { CALIB, STORIES, TINYSTORIES } from '../helpers/paths.js';
import { maxAbsDiffUnchecked } from '../helpers/numeric.js';
import { suiteTempDir } from '../helpers/tmp.js';

const TOL = 1e-4;

/** The mixed activation points plus W8 down_proj and lm_head. */
const RECIPE = `${MIXED_POINTS}  model.layers.*.mlp.down_proj: {weight_bits: 8}\n  lm_head: {weight_bits: 8}\n`;

describe.skipIf(!fs.existsSync(STORIES))('referenceForward static A8/A16/float points, W8 linears, on stories260K against the exact HEF', () => {
  const dir = suiteTempDir('edgellm-refa16-');
  let model: Model;
  let windows: number[][];
  let runs: QdqRun[];
  let logits: Float32Array[];
  beforeAll(async () => {
    const base = loadHfModel(STORIES);
    model = await quantizeWithRecipe(base, RECIPE, loadTokenWindows(CALIB).slice(0, 16));
    const tok = new TextTokenizer(base.tokenizer);
    windows = slidingWindows(await tok.encode(loadTextFile(TINYSTORIES), true), 128, 16);
    logits = await hefLogits(model, windows, dir);
    runs = await runQdqGraph(model, windows);
  });

  it('the recipe: 8 points at 16 bits, 2 float, 11 at 8; down_proj and lm_head W8; the probe graph computes the HEF', () => {
    const bits = Object.values(model.precision!.activations).map((p) => p.bits);
    expect([16, 32, 8].map((b) => bits.filter((x) => x === b).length)).toEqual([8, 2, 11]);
    expect(model.quant.linears['model.layers.2.mlp.down_proj'].bits).toBe(8);
    expect(model.quant.linears.lm_head).toMatchObject({ bits: 8, groupSize: 16 });
    for (let i = 0; i < windows.length; i++) expect(maxAbsDiffUnchecked(runs[i].logits, logits[i])).toBeLessThanOrEqual(1e-6);
  });

  it('independent: logits to 1e-4 up to the first flipped code of each window, every first flip on a rounding boundary', () => {
    const a = agreement(model, windows, runs, logits, false);
    expect(a.codes[16].compared).toBeGreaterThan(1_000_000);
    expect(a.maxAbsBeforeFlip).toBeLessThan(TOL);
    for (const f of a.firstFlips) {
      expect(f.ortDistance, JSON.stringify(f)).toBeLessThan(BOUNDARY[f.bits]);
      expect(f.refDistance, JSON.stringify(f)).toBeLessThan(BOUNDARY[f.bits]);
    }
    if (a.flippedWindows === 0) expect(a.maxAbs).toBeLessThan(TOL);
  });

  it('following ORT only on codes on a rounding boundary: logits to 1e-4 on every row, no other code differs, each differing code a neighbour', () => {
    const a = agreement(model, windows, runs, logits, true);
    for (const bits of [8, 16] as const) {
      expect(a.codes[bits].flips - a.codes[bits].boundaryFlips, `${bits}-bit codes off a boundary`).toBe(0);
      expect(a.codes[bits].nonAdjacent, `${bits}-bit codes two or more apart`).toBe(0);
    }
    expect(a.maxAbs).toBeLessThan(TOL);
  });

  it("'weights' mode dequantizes W8 linears (and the W8 embedding) as the graph's MatMulNBits / GatherBlockQuantized bits 8 do", async () => {
    const w8: Model = { ...model, quant: { ...model.quant, activations: {}, kvCache: [], kCacheOffset: undefined } };
    const some = windows.slice(0, 4);
    const hef = await hefLogits(w8, some, dir);
    some.forEach((w, i) => expect(maxAbsDiffUnchecked(referenceForward(w8, w), hef[i]), `window ${i}`).toBeLessThan(TOL));
  });
});
