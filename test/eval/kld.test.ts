/**
 * runtime/kld: KL-divergence of a model's next-token distributions from a reference's, checked
 * against a direct float64 computation from the TypeScript reference forward on stories260K.
 */
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadHfModel } from '../../formats/hf.js';
import { TextTokenizer } from '../../formats/tokenizer.js';
import { loadTextFile } from '../../calibration/datasets.js';
import { slidingWindows } from '../../calibration/windows.js';
import { rtn } from '../../passes/rtn.js';
import { compile } from '../../src/compiler/compile.js';
import { referenceForward } from '../../src/ir/reference.js';
import type { Model } from '../../src/ir/model.js';
import { silentContext } from '../../src/core/context.js';
import { SimulatorBackend } from '../../src/runtime/simulator.js';
import { klDivergence } from '../../src/eval/kld.js';
import { ShapeMismatchError } from '../../src/core/errors.js';
import { readExecutable, writeExecutable } from '../../formats/hef-executable.js';
import { STORIES, TINYSTORIES as TINY } from '../helpers/paths.js';
import { withTempDir } from '../helpers/tmp.js';

/** log-softmax of each row, float64. */
function logSoftmax(logits: Float32Array, V: number): Float64Array[] {
  const rows: Float64Array[] = [];
  for (let o = 0; o < logits.length; o += V) {
    const row = Float64Array.from(logits.subarray(o, o + V));
    const max = Math.max(...row);
    const lse = max + Math.log(row.reduce((s, x) => s + Math.exp(x - max), 0));
    rows.push(row.map((x) => x - lse));
  }
  return rows;
}

describe('klDivergence on stories260K', () => {
  let fp: Model;
  let w4: Model;
  let windows: number[][];
  let bFp: SimulatorBackend;
  let bW4: SimulatorBackend;
  beforeAll(async () => {
    fp = loadHfModel(STORIES);
    w4 = rtn(fp, { groupSize: 64, quantizeLmHead: false }, silentContext); // weights only: the reference forward dequantizes them
    const tok = new TextTokenizer(fp.tokenizer);
    windows = slidingWindows(await tok.encode(loadTextFile(TINY), true), 64, 3);
    bFp = await SimulatorBackend.load(compile(fp, { prefillLen: 64 }));
    bW4 = await SimulatorBackend.load(compile(w4, { prefillLen: 64 }));
  });
  afterAll(async () => {
    await bFp.dispose();
    await bW4.dispose();
  });

  it('is 0 with full top-1 agreement and ppl ratio 1 for a model against itself', async () => {
    const r = await klDivergence(bFp, bFp, windows);
    expect(r.meanKld).toBe(0);
    expect(r.maxKld).toBe(0);
    expect(r.top1Agreement).toBe(1);
    expect(r.pplRatio).toBe(1);
    expect(r.lnPplRatio).toBe(0);
    expect(r.lnPplRatioStderr).toBe(0);
    expect(r.windowNll).toEqual(r.referenceWindowNll);
    expect(r.predictions).toBe(3 * 63);
  });

  /**
   * Two backends that share nothing (each compiled and loaded on its own, one of them through a HEF
   * file written and read back) must give the same distributions. ORT's CPU kernels are
   * deterministic, so the logits are expected to be identical and the KLD exactly 0; the bounds
   * allow for float32 reassociation between sessions anyway: logits that differ by δ ~ 1e-5 give a
   * KLD of order δ² ~ 1e-10 per prediction, so mean KLD < 1e-9 and |ppl ratio − 1| < 1e-6 (an NLL
   * moved by ~1e-6 nats at most). A real model change (below) is at least six orders larger.
   */
  async function expectSameDistributions(a: SimulatorBackend, b: SimulatorBackend): Promise<void> {
    const r = await klDivergence(a, b, windows);
    expect(r.predictions).toBe(3 * 63);
    expect(Math.abs(r.meanKld)).toBeLessThan(1e-9);
    expect(Math.abs(r.maxKld)).toBeLessThan(1e-8);
    expect(Math.abs(r.pplRatio - 1)).toBeLessThan(1e-6);
    expect(Math.abs(r.lnPplRatio)).toBeLessThan(1e-6);
    // a float32 near-tie could flip one argmax, nothing more
    expect(r.top1Agreement * r.predictions).toBeGreaterThanOrEqual(r.predictions - 1);
    // and both backends assign the text a real (non-degenerate) perplexity
    expect(r.referencePpl).toBeGreaterThan(1);
    expect(r.referencePpl).toBeLessThan(fp.config.vocabSize);
  }

  it('is ≈ 0 with ppl ratio 1 for two separately loaded backends of the same model', async () => {
    const other = await SimulatorBackend.load(compile(fp, { prefillLen: 64 }));
    try {
      expect(other).not.toBe(bFp);
      await expectSameDistributions(other, bFp);
    } finally {
      await other.dispose();
    }
  });

  it('is ≈ 0 with ppl ratio 1 between the compiled model and its HEF artifact read back from disk', async () => {
    await withTempDir('edgellm-kld-', async (dir) => {
      const file = path.join(dir, 'stories.hef');
      writeExecutable(file, compile(fp, { prefillLen: 32 })); // another chunk length: the same function
      const loaded = await SimulatorBackend.load(readExecutable(file));
      try {
        await expectSameDistributions(loaded, bFp);
      } finally {
        await loaded.dispose();
      }
    });
  });

  it('is clearly > 0 for the model with RTN W4 (group 32) weights', async () => {
    const q = rtn(fp, { groupSize: 32, quantizeLmHead: false }, silentContext);
    const bQ = await SimulatorBackend.load(compile(q, { prefillLen: 64 }));
    try {
      const r = await klDivergence(bQ, bFp, windows);
      // 4-bit weights move the next-token distributions measurably: mean KLD above 1e-3 nats, many
      // standard errors away from 0, and far above the ≤ 1e-9 of two loads of one model
      expect(r.meanKld).toBeGreaterThan(1e-3);
      expect(r.meanKld).toBeGreaterThan(5 * r.kldStderr);
      expect(r.maxKld).toBeGreaterThan(r.meanKld);
      expect(r.pplRatio).not.toBe(1);
    } finally {
      await bQ.dispose();
    }
  });

  it('W4 RTN against fp32 equals the float64 computation from the reference forward', async () => {
    const r = await klDivergence(bW4, bFp, windows);
    const V = fp.config.vocabSize;
    const kl: number[] = [];
    let agree = 0;
    let nllQ = 0;
    let nllP = 0;
    for (const w of windows) {
      const P = logSoftmax(referenceForward(fp, w), V);
      const Q = logSoftmax(referenceForward(w4, w), V);
      for (let t = 0; t + 1 < w.length; t++) {
        kl.push(P[t].reduce((s, lp, i) => s + Math.exp(lp) * (lp - Q[t][i]), 0));
        const am = (x: Float64Array) => x.indexOf(Math.max(...x));
        if (am(P[t]) === am(Q[t])) agree++;
        nllP -= P[t][w[t + 1]];
        nllQ -= Q[t][w[t + 1]];
      }
    }
    const mean = kl.reduce((a, b) => a + b, 0) / kl.length;
    expect(mean).toBeGreaterThan(1e-3); // quantization moved the distributions...
    // ...and the simulator measures it as the float64 reference does: float32 logits round at ~1e-6
    // relative, which moves a mean KLD of ~1e-2 by far less than 0.5%
    expect(Math.abs(r.meanKld - mean) / mean).toBeLessThan(5e-3);
    expect(Math.abs(r.maxKld - Math.max(...kl))).toBeLessThan(1e-3);
    // a near-tie may flip one argmax between float32 and float64
    expect(Math.abs(r.top1Agreement * r.predictions - agree)).toBeLessThanOrEqual(1);
    expect(r.pplRatio).toBeCloseTo(Math.exp((nllQ - nllP) / kl.length), 4);
    // per-window mean NLLs: their mean is ln ppl (equal-length windows), and the paired standard
    // error is the spread of the window differences over √windows, recomputed here
    expect(r.windowNll).toHaveLength(3);
    const meanOf = (a: number[]) => a.reduce((x, y) => x + y, 0) / a.length;
    expect(meanOf(r.windowNll)).toBeCloseTo(Math.log(r.ppl), 10);
    expect(meanOf(r.referenceWindowNll)).toBeCloseTo(Math.log(r.referencePpl), 10);
    expect(r.lnPplRatio).toBeCloseTo(Math.log(r.pplRatio), 12);
    const d = r.windowNll.map((x, i) => x - r.referenceWindowNll[i]);
    const sd = Math.sqrt(d.reduce((s, x) => s + (x - meanOf(d)) ** 2, 0) / (d.length - 1));
    expect(r.lnPplRatioStderr).toBeGreaterThan(0);
    expect(r.lnPplRatioStderr).toBeCloseTo(sd / Math.sqrt(3), 12);
    expect(r.medianKld).toBeLessThanOrEqual(r.p99Kld);
    expect(r.p99Kld).toBeLessThanOrEqual(r.maxKld);
  });

  it('refuses models with different vocabularies', async () => {
    const fake = Object.create(bFp, { vocabSize: { value: 100 } });
    await expect(klDivergence(fake, bFp, windows)).rejects.toThrow(ShapeMismatchError);
  });
});
